"""The server process: app assembly, bootstrap, runner, memory footprint, logging."""
