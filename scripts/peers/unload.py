"""Unloads a model from a KServe v2 / Triton server (RepositoryModelUnload: a herd agent
serving alone has no admin service), with the token of $HERD_TOKEN.
Usage: unload.py HOST:PORT MODEL"""
import os
import sys

import tritonclient.grpc as grpcclient

addr, model = sys.argv[1:]
token = os.environ.get("HERD_TOKEN")
headers = {"authorization": f"Bearer {token}"} if token else None
grpcclient.InferenceServerClient(addr).unload_model(model, headers=headers)
