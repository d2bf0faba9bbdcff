"""`python -m matpac_cli` runs the same app as the `matpac` command."""

from matpac_cli.cli import entry

if __name__ == "__main__":
    entry()
