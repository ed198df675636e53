"""`python -m agpnet ...` is the same as the `agpnet` command."""

from agpnet.cli import main

raise SystemExit(main())
