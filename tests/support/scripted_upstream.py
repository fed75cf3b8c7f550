"""A raw HTTP/1.1 upstream whose answers are scripted byte for byte, for pass-through faults.

aiohttp (and the simulator) always finish a response they start; this server can stop in the
middle of a Content-Length or chunked body, or hold a chunked stream open until the test says
to send its next chunk. Paths without a script get a 404 Status (the wrapper's reflectors just
keep retrying against it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

Script = Callable[[asyncio.StreamWriter], Awaitable[None]]

NOT_FOUND = (b'{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",'
             b'"message":"not scripted","reason":"NotFound","code":404}')


def head(*, length: int | None = None, chunked: bool = False) -> bytes:
    lines = ["HTTP/1.1 200 OK", "Content-Type: application/json", "Connection: close"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


LAST_CHUNK = b"0\r\n\r\n"


@dataclass
class ScriptedUpstream:
    scripts: dict[str, Script] = field(default_factory=dict)  # path (no query) -> what to send
    requests: list[str] = field(default_factory=list)  # request lines received, in order
    url: str = ""
    _server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_head = await reader.readuntil(b"\r\n\r\n")
            line = request_head.split(b"\r\n", 1)[0].decode()
            self.requests.append(line)
            path = line.split(" ")[1].partition("?")[0]
            script = self.scripts.get(path)
            if script is None:
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nConnection: close\r\n"
                             + f"Content-Length: {len(NOT_FOUND)}\r\n\r\n".encode() + NOT_FOUND)
            else:
                await script(writer)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, IndexError):
            pass
        finally:
            writer.close()  # every answer ends the connection: complete or cut short
