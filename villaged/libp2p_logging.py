"""Reattach py-libp2p's logger to the root logger; import this before importing libp2p.

At import, libp2p sets its `libp2p` logger to propagate=False with no handlers
(`libp2p/utils/logging.py` `setup_logging`), so its warnings bypass villaged's logging
setup and go to Python's last-resort stderr handler as bare lines (notes/py-libp2p.md §8).
Doing this at import time, not when a node starts, keeps the fix independent of the order
in which a process (or a test run) imports libp2p and configures logging.
"""

from __future__ import annotations

import logging

import libp2p  # noqa: F401  (runs libp2p's setup_logging, which this module undoes)

logging.getLogger("libp2p").propagate = True
