"""A small TCP proxy between the daemon and the lab's AMI that can cut the link on cue."""

from __future__ import annotations

import asyncio
import contextlib


class AmiProxy:
    """Forwards 127.0.0.1:<port> to the lab's AMI. ``cut()`` drops every connection and refuses
    new ones until ``heal()``; ``cut_after(marker)`` cuts right after Asterisk sends ``marker``."""

    def __init__(self, target: tuple[str, int] = ("127.0.0.1", 5038)) -> None:
        self.target = target
        self.port = 0
        self.down = False
        self.cut_marker: bytes | None = None
        self.cut_at: float | None = None
        self.healed_at: float | None = None
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()

    async def start(self) -> AmiProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    def cut(self) -> None:
        """Any cut disarms ``cut_after``: a marker left armed after a cut by hand would cut the link
        again at some later Originate, with no one left to heal it."""
        self.cut_marker = None
        if not self.down:
            self.cut_at = asyncio.get_running_loop().time()
        self.down = True
        for w in list(self._links):
            with contextlib.suppress(Exception):
                w.transport.abort()
        self._links.clear()

    def heal(self) -> None:
        self.down = False
        self.healed_at = asyncio.get_running_loop().time()

    def cut_after(self, marker: bytes) -> None:
        self.cut_marker = marker

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._links |= {writer, up_writer}
        try:
            await asyncio.gather(
                self._pump(reader, up_writer, watch=False),
                self._pump(up_reader, writer, watch=True),
                return_exceptions=True,
            )
        except asyncio.CancelledError:
            # The proxy is closing: a connection handler that ends cancelled makes asyncio's
            # stream callback print a traceback for what is a normal end.
            return

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, watch: bool) -> None:
        try:
            while data := await reader.read(65536):
                if self.down:
                    break
                writer.write(data)
                await writer.drain()
                if watch and self.cut_marker is not None and self.cut_marker in data:
                    self.cut()
                    break
        finally:
            with contextlib.suppress(Exception):
                writer.transport.abort()
