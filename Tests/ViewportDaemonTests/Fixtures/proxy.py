#!/usr/bin/env python3
"""A TCP proxy from a free loopback port to TARGET (host:port) that aborts every connection it carries on SIGUSR1,
and keeps accepting new ones: e.g. a DevTools connection that drops and can be made again. Prints its port, then runs
until killed."""
import asyncio, signal, sys


async def main():
    host, port = sys.argv[1].rsplit(":", 1)
    carried = set()

    async def pipe(reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.transport.abort()

    async def handle(reader, writer):
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            writer.transport.abort()
            return
        pair = (writer, upstream_writer)
        carried.add(pair)
        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))
        carried.discard(pair)

    def drop():
        for pair in list(carried):
            for writer in pair:
                writer.transport.abort()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    # The test runner blocks signals its children inherit.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGUSR1])
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, drop)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


asyncio.run(main())
