"""etcdgw: the etcd v3 API served from an embedded store or Azure Cosmos DB."""
