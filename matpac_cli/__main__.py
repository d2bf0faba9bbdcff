"""`python -m matpac_cli` runs the same app as the `matpac` command."""

from matpac_cli.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
