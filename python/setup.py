"""Builds the moec Python client: generates moec/v1/*_pb2.py and *_pb2_grpc.py from the
repository's proto/moec/v1/*.proto with grpcio-tools, then packages them with the client."""
import os
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.join(os.path.dirname(HERE), "proto")


def generate(out_dir):
    from grpc_tools import protoc  # a build requirement (pyproject.toml)
    import grpc_tools

    proto_dir = os.path.join(PROTO_ROOT, "moec", "v1")
    if not os.path.isdir(proto_dir):
        sys.exit("moec client: no %s; build the package from a moec repository checkout" % proto_dir)
    protos = sorted(os.path.join(proto_dir, f) for f in os.listdir(proto_dir) if f.endswith(".proto"))
    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    os.makedirs(os.path.join(out_dir, "moec", "v1"), exist_ok=True)
    args = ["grpc_tools.protoc", "-I" + PROTO_ROOT, "-I" + include,
            "--python_out=" + out_dir, "--grpc_python_out=" + out_dir] + protos
    if protoc.main(args) != 0:
        sys.exit("moec client: protoc failed on " + " ".join(protos))
    with open(os.path.join(out_dir, "moec", "v1", "__init__.py"), "w") as f:
        f.write('"""Generated from proto/moec/v1 (setup.py): the messages and stubs."""\n')


class BuildWithStubs(build_py):
    def run(self):
        super().run()
        generate(self.build_lib)


setup(cmdclass={"build_py": BuildWithStubs})
