"""``python -m shim``: the ``shim`` command line."""

from shim.cli import main

if __name__ == "__main__":
    main()
