"""The review page: people on the line and quality engineers review what the edge agent logged.

Reads the agent's database (or its S3 mirror) and writes only review feedback. Imports the edge agent's
runtime (never TensorFlow or ``training``), Streamlit and altair.
"""
