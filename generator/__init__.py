"""memballoon: measure, record and publish where a libvirt guest's memory goes."""
from __future__ import annotations

__version__ = "0.1.0"
