// The peer for callpay's side-by-side benchmark: the same relay callpay's hub does for
// `payment.progress`, written the way a Socket.IO 4.8 app would write it.
//
// A client connects with `?call=<id>&role=clinician|patient` (websocket transport only, no
// compression). Each socket joins two rooms: the call, and the call's clinician room. A
// patient's `payment.progress` event goes to the clinicians of its call; nothing else is done
// with it (callpay additionally checks the payment and the sender's role).
//
// With REDIS_URL set, the @socket.io/redis-adapter (ioredis) connects several processes.
// Prints `SOCKETIO_PEER {"port":N,"pid":P}` once listening on 127.0.0.1.
"use strict";

const http = require("node:http");
const { Server } = require("socket.io");

const port = Number(process.env.PORT || 0);
const httpServer = http.createServer();
const io = new Server(httpServer, {
  transports: ["websocket"],
  perMessageDeflate: false,
  httpCompression: false,
  serveClient: false,
  maxHttpBufferSize: 16 * 1024,
  pingInterval: 15000,
  pingTimeout: 7500,
});

async function main() {
  if (process.env.REDIS_URL) {
    const { Redis } = require("ioredis");
    const { createAdapter } = require("@socket.io/redis-adapter");
    const pub = new Redis(process.env.REDIS_URL);
    const sub = pub.duplicate();
    io.adapter(createAdapter(pub, sub));
  }
  io.on("connection", (socket) => {
    const { call, role } = socket.handshake.query;
    if (typeof call !== "string" || (role !== "clinician" && role !== "patient")) {
      socket.disconnect(true);
      return;
    }
    socket.join(call);
    if (role === "clinician") socket.join(`${call}:clinicians`);
    socket.on("payment.progress", (msg) => {
      if (role !== "patient" || msg === null || typeof msg !== "object") return;
      io.to(`${call}:clinicians`).emit("payment.progress", {
        payment_id: msg.payment_id,
        stage: msg.stage,
        participant_id: socket.id,
      });
    });
  });
  httpServer.listen(port, "127.0.0.1", () => {
    const { port: bound } = httpServer.address();
    process.stdout.write(`SOCKETIO_PEER ${JSON.stringify({ port: bound, pid: process.pid })}\n`);
  });
}

process.on("SIGTERM", () => process.exit(0));
main();
