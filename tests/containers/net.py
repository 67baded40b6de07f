"""Network part of the agent tests' workload: TCP 18080 in and out, UDP 15353 in and out."""
import socket

server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", 18080))
server.listen()
client = socket.create_connection(("127.0.0.1", 18080))
accepted, _ = server.accept()
client.sendall(b"x")
accepted.recv(1)

receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
receiver.bind(("127.0.0.1", 15353))
sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sender.sendto(b"y", ("127.0.0.1", 15353))
receiver.recvfrom(1)
