"""The server side of a run: config checks before anything starts, the orchestrator that drives the
nodes through a Transport, the cloud's writer, the FedAvg phase, the node guard, the run directory
and the aggregation of the devices' result files into results.json."""
