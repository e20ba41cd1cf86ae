#!/usr/bin/env python3
"""posresample from a checkout: `python cli.py --help` (the same as the installed `posresample`)."""

from posresample.cli import main

if __name__ == "__main__":
    main()
