"""What the server reports about itself: request records, the access log, metrics."""
