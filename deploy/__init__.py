"""Scripts to run the cdcda-fl Flower apps outside `cdcda run`: `flwr run`, SuperLink + SuperNodes."""
