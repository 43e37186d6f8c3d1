"""The audit trail: an append-only, hash-chained log of every call that creates, reads,
changes or deletes (controller/audit/log.py writes it, controller/audit/verify.py reads
and checks it, controller/api/audit_interceptor.py records each RPC)."""
