"""`bilevel ui`: a read-only live web page over a controller's gRPC API.

backend.py turns RunService answers into bounded JSON (every string from a trial is
hostile and size-capped here; the page inserts it with textContent only); web.py is the
stdlib HTTP server on loopback that serves that JSON and the page in static/.
"""
