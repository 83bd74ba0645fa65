"""seqserve over HTTP and gRPC, for tests:
`PYTHONPATH=. python tests/service/grpc/launcher.py --grpc-port PORT <seqserve serve flags>`.

`service.runner.serve`, with the gRPC server wired in as the runner is to wire it: started once the app's
lifespan has started the registry, drain begun with the HTTP server's, stopped (with what is left of the
grace period) before uvicorn's shutdown.
"""

from __future__ import annotations

import argparse
import logging
import socket
from typing import Any

import service.api
from service import runner
from service.__main__ import build_parser
from service.grpc import GrpcServer, start_grpc_server
from service.settings import Settings


def main() -> None:
    own = argparse.ArgumentParser()
    own.add_argument("--grpc-port", type=int, required=True)
    args, rest = own.parse_known_args()
    settings = Settings(**vars(build_parser().parse_args(rest)))
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    apps: list[Any] = []
    create_app = service.api.create_app

    def capture(settings: Settings) -> Any:
        apps.append(create_app(settings))
        return apps[-1]

    class Server(runner.DrainingServer):
        grpc: GrpcServer | None = None

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if not self.should_exit:
                state = apps[-1].state.seqserve
                self.grpc = await start_grpc_server(state.registry, state.settings, state.metrics, args.grpc_port)

        def _start_drain(self, name: str) -> None:
            super()._start_drain(name)
            if self.grpc is not None:
                self.grpc.begin_drain()

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            if self.grpc is not None:
                await self.grpc.stop(max(1.0, float(self.config.timeout_graceful_shutdown or 1)))
            await super().shutdown(sockets)

    service.api.create_app = capture  # type: ignore[assignment]
    runner.DrainingServer = Server  # type: ignore[misc]
    runner.serve(settings)


if __name__ == "__main__":
    main()
