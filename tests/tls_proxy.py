"""A TLS-terminating reverse proxy for the tests, as kiln is deployed behind one: serves https
on 127.0.0.1 with CERT and KEY and forwards each GET to the plain-HTTP kiln at UPSTREAM.
Prints its port, then serves until killed. Usage: tls_proxy.py CERT KEY UPSTREAM"""

import http.server
import ssl
import sys
import urllib.error
import urllib.request

cert, key, upstream = sys.argv[1], sys.argv[2], sys.argv[3]


class Forward(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        request = urllib.request.Request(upstream + self.path, headers=dict(self.headers))
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                status, headers, body = answer.status, answer.headers, answer.read()
        except urllib.error.HTTPError as e:
            status, headers, body = e.code, e.headers, e.read()
        self.send_response(status)
        self.send_header("content-type", headers.get("content-type", "application/json"))
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = http.server.HTTPServer(("127.0.0.1", 0), Forward)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
