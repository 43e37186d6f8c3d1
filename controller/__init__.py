"""The Bilevel controller: gRPC service, research loops, LLM providers, sandbox backend."""
