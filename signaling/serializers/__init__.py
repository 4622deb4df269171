"""Wire dialects: each turns one protocol's messages into typed values and back, apart from any socket."""
