"""The Bilevel controller: gRPC service, research loops, LLM providers, sandbox backend."""

from controller import _cpython_fixes

_cpython_fixes.install()
