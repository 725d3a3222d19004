"""An independent Modbus server for regpoll's interop test.

Reads a JSON list of values from the file named by its first argument,
encodes each one itself (with Python's struct module, not regpoll's encoder)
in the requested type and byte order, serves them with pymodbus, and runs
until its stdin closes. The second argument says how: `tcp` (the default;
Modbus TCP on 127.0.0.1, a free port), `rtu-over-tcp` (pymodbus's RTU framer
on such a socket), or `serial:PATH` (pymodbus's serial server, RTU at 9600
8N1, on the serial device PATH). It prints the port, or `ready` for a serial
line, on one line once it serves.

Each entry: {"kind": "holding"|"input"|"coil"|"discrete", "address": int,
"type": "u16"|"i16"|"u32"|"i32"|"u64"|"i64"|"f16"|"f32"|"f64"|"bcd16"|"bcd32"|
"u8"|"i8"|"string"|"bool", "order": "ABCD"|"CDAB"|"BADC"|"DCBA",
"value": number|string|bool (bcd: a string of hex digits, so that a bad
nibble can be served), "length": registers (strings), "bit": 0..15 (bools in a
register), "byte": "high"|"low" (u8, i8)}.

A word swap reverses the words of a number, and exchanges the words of each
pair of registers of a string.
"""
import asyncio
import json
import struct
import sys

from pymodbus.datastore import ModbusSequentialDataBlock, ModbusServerContext, ModbusSlaveContext
from pymodbus.server.async_io import ModbusSerialServer, ModbusTcpServer
from pymodbus.transaction import ModbusRtuFramer, ModbusSocketFramer

FORMATS = {"u16": ">H", "i16": ">h", "u32": ">I", "i32": ">i", "u64": ">Q", "i64": ">q",
           "f16": ">e", "f32": ">f", "f64": ">d", "u8": ">B", "i8": ">b"}
BCD_DIGITS = {"bcd16": 4, "bcd32": 8}
SIZE = 200


def words_of(entry):
    """Big-endian bytes, then the order's swaps, as registers."""
    kind = entry["type"]
    if kind == "string":
        raw = entry["value"].encode("utf-8").ljust(entry["length"] * 2, b"\0")
    elif kind in BCD_DIGITS:
        # Each hex digit is one nibble: "00123456" is BCD 123456.
        raw = bytes.fromhex(entry["value"].rjust(BCD_DIGITS[kind], "0"))
    else:
        raw = struct.pack(FORMATS[kind], entry["value"])
    chunks = [raw[i:i + 2] for i in range(0, len(raw), 2)]
    if entry.get("order", "ABCD") in ("CDAB", "DCBA"):
        if kind == "string":
            for i in range(0, len(chunks) - 1, 2):
                chunks[i], chunks[i + 1] = chunks[i + 1], chunks[i]
        else:
            chunks.reverse()
    if entry.get("order", "ABCD") in ("BADC", "DCBA"):
        chunks = [c[::-1] for c in chunks]
    return [int.from_bytes(c, "big") for c in chunks]


def tables(entries):
    regs = {"holding": [0] * SIZE, "input": [0] * SIZE}
    bits = {"coil": [False] * SIZE, "discrete": [False] * SIZE}
    for e in entries:
        if e["kind"] in bits:
            bits[e["kind"]][e["address"]] = bool(e["value"])
        elif e["type"] == "bool":
            if e["value"]:
                regs[e["kind"]][e["address"]] |= 1 << e["bit"]
        elif e["type"] in ("u8", "i8"):
            byte = struct.pack(FORMATS[e["type"]], e["value"])[0]
            regs[e["kind"]][e["address"]] |= byte << (8 if e["byte"] == "high" else 0)
        else:
            for i, w in enumerate(words_of(e)):
                regs[e["kind"]][e["address"] + i] = w
    return regs, bits


async def main():
    with open(sys.argv[1], encoding="utf-8") as spec:
        regs, bits = tables(json.load(spec))
    slave = ModbusSlaveContext(
        hr=ModbusSequentialDataBlock(0, regs["holding"]),
        ir=ModbusSequentialDataBlock(0, regs["input"]),
        co=ModbusSequentialDataBlock(0, bits["coil"]),
        di=ModbusSequentialDataBlock(0, bits["discrete"]),
        zero_mode=True,
    )
    context = ModbusServerContext(slaves=slave, single=True)
    mode = sys.argv[2] if len(sys.argv) > 2 else "tcp"
    if mode.startswith("serial:"):
        server = ModbusSerialServer(context, framer=ModbusRtuFramer, port=mode[len("serial:"):],
                                    baudrate=9600, bytesize=8, parity="N", stopbits=1)
        await server.start()
        task = None
        print("ready", flush=True)
    else:
        framer = ModbusRtuFramer if mode == "rtu-over-tcp" else ModbusSocketFramer
        server = ModbusTcpServer(context, framer=framer, address=("127.0.0.1", 0))
        task = asyncio.create_task(server.serve_forever())
        await server.serving
        print(server.server.sockets[0].getsockname()[1], flush=True)
    # Stop when the test closes our stdin (or dies).
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    if task is None:
        await server.shutdown()
    else:
        task.cancel()


if __name__ == "__main__":
    asyncio.run(main())
