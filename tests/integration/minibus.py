# A minimal D-Bus client on the system bus (EXTERNAL auth, Hello, method
# calls), for what busctl cannot do: keep a connection open, or time calls
# over one connection without a process start in each.
#
#   python3 minibus.py hold SVC OUT        take SVC's Service.Lock(u 0) and
#                                          keep the connection: write "locked
#                                          <pid>" or "error <name>" to OUT,
#                                          then idle until killed
#   python3 minibus.py hold SVC OUT call   the same; then, once OUT.go exists,
#                                          one call as the holder
#                                          (Ip.Announce of ip#231), its answer
#                                          to OUT.call as "call ok" or
#                                          "call <error name>"
#   python3 minibus.py calls N PATH IFACE MEMBER
#                                          N calls of MEMBER, whatever they
#                                          answer: prints "returned R errors E"
#   python3 minibus.py time N PATH IFACE MEMBER
#                                          N calls of MEMBER (no arguments) on
#                                          io.ferry.Helper1 over this one
#                                          connection, after one uncounted:
#                                          each call's round trip in µs, one a
#                                          line; exits 1 at the first error
import os, socket, struct, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect("/run/dbus/system_bus_socket")
s.sendall(b"\0AUTH EXTERNAL " + str(os.getuid()).encode().hex().encode() + b"\r\n")
assert s.recv(4096).startswith(b"OK")
s.sendall(b"BEGIN\r\n")
def pad(b, n): return b + b"\0" * (-len(b) % n)
def field(code, sig, val):
    f = struct.pack("<B", code) + bytes([len(sig)]) + sig.encode() + b"\0"
    if sig in "so":
        f = pad(f, 4) + struct.pack("<I", len(val)) + val.encode() + b"\0"
    else:
        f += bytes([len(val)]) + val.encode() + b"\0"
    return f
def call(serial, path, iface, member, dest, sig="", body=b""):
    fields = b""
    for code, t, v in [(1, "o", path), (2, "s", iface), (3, "s", member), (6, "s", dest)] + ([(8, "g", sig)] if sig else []):
        fields = pad(fields, 8) + field(code, t, v)
    head = b"l\x01\x00\x01" + struct.pack("<III", len(body), serial, len(fields)) + fields
    s.sendall(pad(head, 8) + body)
buf = b""
def message():
    global buf
    while True:
        if len(buf) >= 16:
            blen, serial, flen = struct.unpack("<III", buf[4:16])
            total = 16 + flen + (-(16 + flen) % 8) + blen
            if len(buf) >= total:
                m, buf = buf[:total], buf[total:]
                return m
        chunk = s.recv(65536)
        if not chunk: sys.exit("bus closed")
        buf += chunk
def reply_to(serial):
    while True:
        m = message()
        mtype, flen = m[1], struct.unpack("<I", m[12:16])[0]
        fields, i, rs, err = m[16:16 + flen], 0, None, ""
        while i < len(fields):
            i += -i % 8
            code, sl = fields[i], fields[i + 1]
            sig = fields[i + 2:i + 2 + sl].decode(); i += 3 + sl
            if sig == "u":
                i += -i % 4; v = struct.unpack("<I", fields[i:i + 4])[0]; i += 4
            elif sig in "so":
                i += -i % 4; n = struct.unpack("<I", fields[i:i + 4])[0]; v = fields[i + 4:i + 4 + n].decode(); i += 5 + n
            else:
                n = fields[i]; v = fields[i + 1:i + 1 + n].decode(); i += 2 + n
            if code == 5: rs = v
            if code == 4: err = v
        if rs == serial and mtype in (2, 3):
            return mtype, err
def put(name, text):
    with open(name + ".tmp", "w") as f: f.write(text)
    os.rename(name + ".tmp", name)
def hold(svc, out, then_call):
    call(2, "/io/ferry/Helper1/service/" + svc, "io.ferry.Helper1.Service", "Lock", "io.ferry.Helper1", "u", struct.pack("<I", 0))
    mtype, err = reply_to(2)
    put(out, ("locked %d\n" % os.getpid()) if mtype == 2 else ("error %s\n" % err))
    if then_call:
        while not os.path.exists(out + ".go"): time.sleep(0.05)
        call(3, "/io/ferry/Helper1/service/" + svc + "/ip_231", "io.ferry.Helper1.Ip", "Announce", "io.ferry.Helper1")
        mtype, err = reply_to(3)
        put(out + ".call", "call ok\n" if mtype == 2 else "call %s\n" % err)
        time.sleep(600)
    while mtype == 2: time.sleep(60)
def time_calls(n, path, iface, member):
    for serial in range(2, n + 3):
        t0 = time.perf_counter_ns()
        call(serial, path, iface, member, "io.ferry.Helper1")
        mtype, err = reply_to(serial)
        t1 = time.perf_counter_ns()
        if mtype != 2: sys.exit("%s.%s: %s" % (iface, member, err))
        if serial > 2: print((t1 - t0) // 1000)
def count_calls(n, path, iface, member):
    returned = errors = 0
    for serial in range(2, n + 2):
        call(serial, path, iface, member, "io.ferry.Helper1")
        mtype, err = reply_to(serial)
        if mtype == 2: returned += 1
        else: errors += 1
    print("returned %d errors %d" % (returned, errors))
call(1, "/org/freedesktop/DBus", "org.freedesktop.DBus", "Hello", "org.freedesktop.DBus")
reply_to(1)
if sys.argv[1] == "hold":
    hold(sys.argv[2], sys.argv[3], sys.argv[4:] == ["call"])
elif sys.argv[1] == "calls":
    count_calls(int(sys.argv[2]), *sys.argv[3:6])
elif sys.argv[1] == "time":
    time_calls(int(sys.argv[2]), *sys.argv[3:6])
else:
    sys.exit("usage: minibus.py hold SVC OUT [call] | calls|time N PATH IFACE MEMBER")
