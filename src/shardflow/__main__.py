"""``python -m shardflow``: the command line (``shardflow.cli``)."""

from shardflow.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
