"""Processing elements of the systolic engine: one interface, several arithmetic kinds.

Every kind has the ports of :func:`pe_signature` and differs only in how it forms the
per-cycle product sum (see :class:`~hw.pe.base.ProcessingElement`). The kind is a build-time
parameter of the core (``--pe``); IDENTIFY reports it as :class:`sw.protocol.PeKind`.
"""

from .base import ProcessingElement, pe_signature, PE_KINDS, pe_class, pe_formats

__all__ = ["ProcessingElement", "pe_signature", "PE_KINDS", "pe_class", "pe_formats"]
