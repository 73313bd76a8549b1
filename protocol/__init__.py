"""Protobuf <-> domain conversion, one module per service; nothing else touches ``_pb2`` types
except servicers and clients' stubs."""
