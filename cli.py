#!/usr/bin/env python3
"""Run the medexport CLI from a checkout: ``python cli.py --help`` (same as the ``medexport`` command)."""

from medexport.cli import main

if __name__ == "__main__":
    main()
