"""The help formatter of every phieat command line (``phieat-render``, its ``assets``
commands, ``phieat-eval``): standard library only, like the rest of ``phieat``."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keep the examples' line breaks and show each option's default, unless the help text
    already speaks of it or there is none worth showing (None, False, an empty list)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        uninformative = (
            default is None or default is False or default == [] or default == argparse.SUPPRESS
        )
        if uninformative or "default" in text:
            return text
        return text + " (default: %(default)s)"
