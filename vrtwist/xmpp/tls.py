"""STARTTLS context for the XMPP link: mutual certificates against one CA.

The real control node and agent both use ``verify_peer`` with a CA file and no host
name check (the JIDs are host names, not DNS names), so neither do we.
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet.ssl import Certificate, CertificateOptions, PrivateCertificate

__all__ = ["mutual_tls_options"]


def mutual_tls_options(cert: str | Path, key: str | Path, ca: str | Path) -> CertificateOptions:
    """Options that present ``cert``/``key`` and require a peer certificate signed by ``ca``."""
    own = PrivateCertificate.loadPEM(Path(cert).read_bytes() + b"\n" + Path(key).read_bytes())
    authority = Certificate.loadPEM(Path(ca).read_bytes())
    options: CertificateOptions = own.options(authority)
    return options
