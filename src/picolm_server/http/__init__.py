"""HTTP plumbing under every wire API: route tables, request parsing, responses, limits, manners."""
