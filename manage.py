#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ftstudio.settings")
    from django.core.management import execute_from_command_line

    try:
        execute_from_command_line(sys.argv)
    except Exception as exc:  # a full or read-only disk is said plainly, not as a traceback
        from ftstudio.storage import storage_problem

        problem = storage_problem(exc)
        if not problem:
            raise
        sys.stderr.write(f"{problem}\n({type(exc).__name__}: {exc})\n")
        sys.exit(1)


if __name__ == "__main__":
    main()
