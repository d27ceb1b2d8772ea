"""A two-service example: an order service and a billing worker."""
