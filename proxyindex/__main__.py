"""``python -m proxyindex``: the same as the ``proxyindex`` command."""

from proxyindex.cli import main

raise SystemExit(main())
