"""LLM providers for the proposers: Anthropic and OpenAI-compatible SDKs, retries,
accounting, replay, and a scripted fake server for tests."""
