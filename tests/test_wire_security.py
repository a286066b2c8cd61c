"""
Security of remote workers: the shared-key handshake, where keys come
from, servers that refuse to be exposed without a key, TLS, and input
that is malformed, oversized or cut off, none of which may harm the
server or its other clients.
"""
import datetime
import importlib.util
import ipaddress
import os
import pickle
import shutil
import tempfile

from twisted.internet import defer, endpoints, protocol, reactor
from twisted.protocols import amp
from twisted.trial import unittest

from asynqueue import wire, wireproto, wireserver
from asynqueue.util import o2p

from test_wire import WireTestCase, WireTestUniverse, waitUntil

KEY = "correct horse battery staple"

#: What a malicious pickle would have done, had it been loaded.
unpickled = []


def recordUnpickling(text):
    unpickled.append(text)
    return text


class Exploit:
    """Pickles as a call of recordUnpickling."""

    def __reduce__(self):
        return recordUnpickling, ("the server loaded a pickle",)


class RawClient(protocol.Protocol):
    """Sends bytes as they are and records what comes back."""

    def __init__(self):
        self.received = b""
        self.dLost = defer.Deferred()

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.dLost.callback(None)


def box(**items):
    return amp.AmpBox({k.encode(): v for k, v in items.items()}).serialize()


def runTaskBox(name, *args, tag=b"1"):
    return box(_command=b"RunTask", _ask=tag, methodName=o2p(name),
               args=o2p(args), kw=b"")


class SecurityTestCase(WireTestCase):

    def setUp(self):
        WireTestCase.setUp(self)
        del unpickled[:]
        self.rawClients = []

    @defer.inlineCallbacks
    def tearDown(self):
        for client in self.rawClients:
            if client.transport is not None and client.transport.connected:
                client.transport.abortConnection()
                yield client.dLost
        yield WireTestCase.tearDown(self)

    @defer.inlineCallbacks
    def rawConnect(self, description):
        client = RawClient()
        endpoint = endpoints.clientFromString(reactor, description)
        yield endpoints.connectProtocol(endpoint, client)
        self.rawClients.append(client)
        return client

    @defer.inlineCallbacks
    def assertDropped(self, client):
        """The server closes the connection of ``client`` at once (well
        before the handshake timeout would)."""
        yield waitUntil(lambda: client.dLost.called, "the server to drop "
                        "the connection", deadline=3.0)
        self.assertFalse(client.transport.connected)

    @defer.inlineCallbacks
    def assertServerWorks(self, description, **workerKw):
        worker = self.makeWorker(description, **workerKw)
        q = self.makeQueue(worker)
        self.assertEqual((yield q.call("add", 20, 22)), 42)


class TestAuthentication(SecurityTestCase):

    @defer.inlineCallbacks
    def test_rightKeyWorks(self):
        server, description = yield self.startServer(key=KEY)
        yield self.assertServerWorks(description, key=KEY)

    @defer.inlineCallbacks
    def test_noKeyIsRefused(self):
        server, description = yield self.startServer(key=KEY)
        worker = self.makeWorker(description)
        q = self.makeQueue(worker)
        error = yield self.assertFailure(
            worker.whenConnected(), wire.AuthenticationError)
        self.assertIn("requires a key", str(error))
        yield waitUntil(lambda: len(q) == 0, "the worker to resign")

    @defer.inlineCallbacks
    def test_wrongKeyIsRefusedAndServerGoesOn(self):
        server, description = yield self.startServer(key=KEY)
        worker = self.makeWorker(description, key="not the key, not at all")
        error = yield self.assertFailure(
            worker.whenConnected(), wire.AuthenticationError)
        self.assertIn("refused", str(error))
        yield waitUntil(lambda: not server.factory.connections,
                        "the server to drop the client")
        yield self.assertServerWorks(description, key=KEY)

    @defer.inlineCallbacks
    def test_keylessServerCannotProveItself(self):
        server, description = yield self.startServer()
        worker = self.makeWorker(description, key=KEY)
        error = yield self.assertFailure(
            worker.whenConnected(), wire.AuthenticationError)
        self.assertIn("cannot prove", str(error))

    @defer.inlineCallbacks
    def test_unauthenticatedCallNeverUnpickled(self):
        server, description = yield self.startServer(key=KEY)
        client = yield self.rawConnect(description)
        client.transport.write(box(
            _command=b"RunTask", _ask=b"1", methodName=pickle.dumps(Exploit()),
            args=pickle.dumps(Exploit()), kw=b""))
        yield self.assertDropped(client)
        self.assertEqual(unpickled, [])
        self.assertNotIn(b"_answer", client.received)

    @defer.inlineCallbacks
    def test_authenticatedCallsAreUnpickled(self):
        """The check above can fail: once authenticated, it would run."""
        server, description = yield self.startServer(key=KEY)
        worker = self.makeWorker(description, key=KEY)
        q = self.makeQueue(worker)
        yield q.call("add", "", Exploit())
        self.assertEqual(unpickled, ["the server loaded a pickle"])

    @defer.inlineCallbacks
    def test_payloadBeforeAuthenticationDropped(self):
        server, description = yield self.startServer(key=KEY)
        client = yield self.rawConnect(description)
        client.transport.write(box(
            _command=b"Hello", _ask=b"1", version=b"1", nonce=b"n" * 32,
            _payload=b"1000") + b"x" * 1000)
        yield self.assertDropped(client)

    @defer.inlineCallbacks
    def test_handshakeTimeout(self):
        self.patch(wireserver, "HANDSHAKE_TIMEOUT", 0.1)
        server, description = yield self.startServer(key=KEY)
        client = yield self.rawConnect(description)
        yield self.assertDropped(client)


class TestKeys(unittest.TestCase):

    def setUp(self):
        for name in (wireproto.KEY_ENV, wireproto.KEYFILE_ENV):
            if name in os.environ:
                self.patch(os, "environ", dict(os.environ))
                del os.environ[name]

    def keyFile(self, content, mode=0o600):
        directory = tempfile.mkdtemp(prefix="aq-wire-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "key")
        with open(path, "w") as fh:
            fh.write(content + "\n")
        os.chmod(path, mode)
        return path

    def test_keywordFileAndEnvironment(self):
        self.assertIsNone(wireproto.resolveKey())
        self.assertEqual(wireproto.resolveKey(KEY), KEY.encode())
        path = self.keyFile("from a file, long enough")
        self.assertEqual(wireproto.resolveKey(keyFile=path),
                         b"from a file, long enough")
        self.patch(os, "environ", dict(os.environ))
        os.environ[wireproto.KEYFILE_ENV] = path
        self.assertEqual(wireproto.resolveKey(), b"from a file, long enough")
        os.environ[wireproto.KEY_ENV] = "from the environment"
        self.assertEqual(wireproto.resolveKey(), b"from the environment")
        self.assertEqual(wireproto.resolveKey(KEY), KEY.encode())

    def test_shortKeyRefused(self):
        error = self.assertRaises(ValueError, wireproto.resolveKey, "short")
        self.assertIn("secrets.token_hex", str(error))

    def test_keyFileReadableByOthersRefused(self):
        path = self.keyFile("a key that others could read", 0o644)
        error = self.assertRaises(
            ValueError, wireproto.resolveKey, keyFile=path)
        self.assertIn("chmod 600", str(error))


class TestExposure(unittest.TestCase):
    """No key, no listener that other hosts can reach."""

    def test_refusedWithoutKey(self):
        for description in ("tcp:0", "tcp:0:interface=0.0.0.0",
                            "tcp6:0:interface=\\:\\:"):
            error = self.assertRaises(
                wire.WireError, wire.WireServer, description,
                WireTestUniverse())
            self.assertIn("without a key", str(error))

    def test_loopbackAndUnixAllowed(self):
        for description in ("tcp:0:interface=127.0.0.1",
                            "tcp6:0:interface=\\:\\:1", "unix:/tmp/x.sock",
                            "tcp:0:interface=localhost"):
            wire.WireServer(description, WireTestUniverse())

    def test_allowedWithKey(self):
        wire.WireServer("tcp:0", WireTestUniverse(), key=KEY)


def missingTLS():
    """Why TLS cannot be tested here, or None."""
    missing = [name for name in ("cryptography", "OpenSSL",
                                 "service_identity")
               if importlib.util.find_spec(name) is None]
    if missing:
        return "TLS needs twisted[tls] and cryptography; missing: {}".format(
            ", ".join(missing))
    return None


class TestTLS(SecurityTestCase):

    skip = missingTLS()

    def makeCertificates(self, directory):
        """A CA and a server certificate for 127.0.0.1 signed by it, as
        PEM files in ``directory``; returns (server PEM, directory of the
        trusted CA)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        def name(text):
            return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

        now = datetime.datetime.now(datetime.timezone.utc)
        caKey = ec.generate_private_key(ec.SECP256R1())
        ca = x509.CertificateBuilder().subject_name(name("test CA")) \
            .issuer_name(name("test CA")).public_key(caKey.public_key()) \
            .serial_number(1).not_valid_before(now - datetime.timedelta(1)) \
            .not_valid_after(now + datetime.timedelta(1)) \
            .add_extension(x509.BasicConstraints(ca=True, path_length=None),
                           critical=True).sign(caKey, hashes.SHA256())
        key = ec.generate_private_key(ec.SECP256R1())
        cert = x509.CertificateBuilder().subject_name(name("127.0.0.1")) \
            .issuer_name(ca.subject).public_key(key.public_key()) \
            .serial_number(2).not_valid_before(now - datetime.timedelta(1)) \
            .not_valid_after(now + datetime.timedelta(1)) \
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(
                ipaddress.ip_address("127.0.0.1"))]), critical=False) \
            .sign(caKey, hashes.SHA256())
        pem = serialization.Encoding.PEM
        serverPem = os.path.join(directory, "server.pem")
        with open(serverPem, "wb") as fh:
            fh.write(key.private_bytes(
                pem, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()))
            fh.write(cert.public_bytes(pem))
        trusted = os.path.join(directory, "trusted")
        os.mkdir(trusted)
        with open(os.path.join(trusted, "ca.pem"), "wb") as fh:
            fh.write(ca.public_bytes(pem))
        return serverPem, trusted

    @defer.inlineCallbacks
    def startTLSServer(self):
        serverPem, trusted = self.makeCertificates(self.directory)
        server, description = yield self.startServer(
            description="ssl:0:interface=127.0.0.1:privateKey=" + serverPem,
            key=KEY)
        port = server.service.port.getHost().port
        return port, trusted

    @defer.inlineCallbacks
    def test_tlsWithKey(self):
        port, trusted = yield self.startTLSServer()
        description = "tls:127.0.0.1:{}:trustRoots={}".format(port, trusted)
        worker = self.makeWorker(description, key=KEY)
        q = self.makeQueue(worker)
        self.assertEqual((yield q.call("add", 1, 2)), 3)
        self.assertEqual(len((yield q.call("blob", 1 << 20))), 1 << 20)
        transport = worker.ap.transport
        self.assertIsNotNone(transport.getPeerCertificate())

    @defer.inlineCallbacks
    def test_untrustedServerRefused(self):
        """A client that trusts another CA does not talk to the server."""
        port, trusted = yield self.startTLSServer()
        other = os.path.join(self.directory, "other")
        os.mkdir(other)
        otherPem, otherTrusted = self.makeCertificates(other)
        description = "tls:127.0.0.1:{}:trustRoots={}".format(
            port, otherTrusted)
        worker = self.makeWorker(description, key=KEY)
        self.makeQueue(worker)
        yield self.assertFailure(worker.whenConnected(), Exception)


class TestMalformedInput(SecurityTestCase):
    """Garbage and abuse get the offender dropped; the server goes on."""

    @defer.inlineCallbacks
    def check(self, data, key=None, dropped=True):
        server, description = yield self.startServer(key=key)
        client = yield self.rawConnect(description)
        client.transport.write(data)
        if dropped:
            yield self.assertDropped(client)
        yield self.assertServerWorks(description, key=key)
        return client

    def test_garbage(self):
        return self.check(os.urandom(5000) + b"\xff" * 300)

    def test_garbageBeforeAuthentication(self):
        return self.check(os.urandom(5000), key=KEY)

    def test_boxWithoutCommand(self):
        return self.check(box(hello=b"there"))

    def test_answerToNothing(self):
        return self.check(box(_answer=b"99", status=b"r"))

    def test_oversizedBox(self):
        data = b"".join(
            box(**{"k{}".format(k): b"v" * 60000}) [:-2] for k in range(20))
        return self.check(
            box(_command=b"RunTask", _ask=b"1")[:-2] + data + b"\x00\x00")

    def test_oversizedBoxBeforeAuthentication(self):
        return self.check(box(_command=b"Hello", _ask=b"1",
                              nonce=b"n" * 30000), key=KEY)

    def test_commandBeforeAuthentication(self):
        return self.check(runTaskBox("add", 1, 2), key=KEY)

    def test_malformedPayloadHeader(self):
        return self.check(box(_command=b"RunTask", _ask=b"1",
                              _payload=b"12,x"))

    @defer.inlineCallbacks
    def test_oversizedPayload(self):
        server, description = yield self.startServer(maxPayload=1000)
        client = yield self.rawConnect(description)
        client.transport.write(box(
            _command=b"RunTask", _ask=b"1", _payload=b"2000") + b"x" * 2000)
        yield self.assertDropped(client)
        yield self.assertServerWorks(description)

    @defer.inlineCallbacks
    def test_unknownCommandAnswered(self):
        """On a server without a key an unknown command just gets an error
        answer, and the connection goes on."""
        client = yield self.check(
            box(_command=b"Nope", _ask=b"1"), dropped=False)
        yield waitUntil(lambda: b"_error" in client.received, "an answer")
        self.assertIn(b"Unhandled Command", client.received)
        client.transport.write(runTaskBox("add", 1, 2, tag=b"2"))
        yield waitUntil(lambda: b"_answer" in client.received, "a result")
        self.assertIn(o2p(3), client.received)

    @defer.inlineCallbacks
    def test_badArgumentsAnswered(self):
        client = yield self.check(box(
            _command=b"RunTask", _ask=b"1", methodName=b"not a pickle",
            args=b"", kw=b"", streaming=b"perhaps"), dropped=False)
        yield waitUntil(lambda: b"_error" in client.received, "an answer")
        client.transport.write(box(
            _command=b"RunTask", _ask=b"2", methodName=b"not a pickle",
            args=b"", kw=b""))
        yield waitUntil(lambda: b"load the call" in client.received,
                        "an error status")

    @defer.inlineCallbacks
    def test_clientVanishingMidCall(self):
        server, description = yield self.startServer()
        client = yield self.rawConnect(description)
        client.transport.write(runTaskBox("hold", 1))
        yield waitUntil(lambda: server.wwu.held, "the call to run")
        client.transport.abortConnection()
        yield client.dLost
        server.wwu.release()
        yield self.assertServerWorks(description)

    @defer.inlineCallbacks
    def test_clientVanishingMidPayload(self):
        server, description = yield self.startServer()
        client = yield self.rawConnect(description)
        client.transport.write(box(
            _command=b"RunTask", _ask=b"1", methodName=o2p("add"), args=b"",
            kw=b"", _payload=b"100000") + b"x" * 5000)
        yield waitUntil(lambda: server.factory.connections, "the connection")
        client.transport.abortConnection()
        yield client.dLost
        yield self.assertServerWorks(description)
