// A client of the original gateway's kind: @grpc/grpc-js + @grpc/proto-loader
// loading the package-less protos, doing register, login, create, list, update and
// delete. Usage: node grpc_js_client.js HOST:PORT PROTO_DIR [CA_PEM]
// With CA_PEM it connects over TLS (credentials.createSsl, the server's certificate
// checked against that CA and HOST). Prints one JSON line with what it saw; exits
// non-zero on any failure.
'use strict';
const fs = require('fs');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const [addr, protoDir, caFile] = process.argv.slice(2);
const creds = caFile ? grpc.credentials.createSsl(fs.readFileSync(caFile))
  : grpc.credentials.createInsecure();
const opts = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true };
const auth = grpc.loadPackageDefinition(
  protoLoader.loadSync(path.join(protoDir, 'auth.proto'), opts));
const task = grpc.loadPackageDefinition(
  protoLoader.loadSync(path.join(protoDir, 'task.proto'), opts));
const authClient = new auth.AuthService(addr, creds);
const taskClient = new task.TaskService(addr, creds);

function call(client, method, req, token) {
  const md = new grpc.Metadata();
  if (token) md.set('authorization', `Bearer ${token}`);
  return new Promise((resolve, reject) => {
    client[method](req, md, { deadline: Date.now() + 10000 }, (err, res) =>
      err ? reject(new Error(`${method}: ${err.code} ${err.details}`)) : resolve(res));
  });
}

async function main() {
  const email = `js-${Date.now()}-${Math.floor(Math.random() * 1e6)}@example.com`;
  const password = 'Sup3r-S3cret-Passw0rd!';
  const reg = await call(authClient, 'Register', { email, password });
  const login = await call(authClient, 'Login', { email, password });
  const token = login.token;
  const created = await call(taskClient, 'CreateTask',
    { title: 'from grpc-js', description: 'node client' }, token);
  const list = await call(taskClient, 'ListTasks', { limit: 200 }, token);
  const updated = await call(taskClient, 'UpdateTask',
    { id: created.id, status: 'in progress' }, token);
  const deleted = await call(taskClient, 'DeleteTask', { id: created.id }, token);
  let gone = null;
  try {
    await call(taskClient, 'GetTask', { id: created.id }, token);
  } catch (e) {
    gone = e.message;
  }
  console.log(JSON.stringify({
    registered: !!reg.token, token: !!token, created, listed: list.tasks.map((t) => t.id),
    updated, deleted, gone,
  }));
}

main().then(() => process.exit(0), (e) => { console.error(e.message); process.exit(1); });
