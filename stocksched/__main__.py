from stocksched.cli import entrypoint

entrypoint()
