"""The base of every user-facing error: bad config, data, benchmark, checkpoint or cache files.

The bottom layer of the package (imports nothing of appo), so every module can subclass it. The `appo`
dispatcher prints such an error as one line, `appo <command>: <message>`, and exits 2; anything else is a
bug and keeps its traceback. Messages therefore name the file (and row or key) and what is wrong.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input the user can fix; the message names the file or key and what is wrong."""
