"""The app's version, and the ``Version`` value it writes into infotext."""

from __future__ import annotations

__version__ = "0.1.0"

# Written as ``Version`` in infotext. A1111 applies old-version back-compat rules to versions it can parse (e.g.
# "v1.5.0"); this string is deliberately not one it parses, so A1111 reads our infotext as current.
INFOTEXT_VERSION = f"sdwebui-{__version__}"
