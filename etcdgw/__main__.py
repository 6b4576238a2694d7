"""``python -m etcdgw``: the same as the ``etcdgw`` command."""

from etcdgw.cli import main

raise SystemExit(main())
