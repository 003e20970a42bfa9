// The original Node.js system's own callers of AuthService and TaskService, as they
// call TMS roles during a migration (issue 21): the calls of the original api-gateway
// (its auth and task controllers and verifyToken middleware) and notification-service
// (helpers/helper.js getUserEmail), made with @grpc/grpc-js + @grpc/proto-loader loading
// the package-less .proto files with no options, as they do, and with NO metadata.
// (The original gateway also retries a failed call 3 times at 1 s before answering
// 400; the answers TMS gives are what is tested, so each call is made once.)
//
//   node legacy_clients.js [--from IP] gateway AUTH_ADDR TASK_ADDR PROTO_DIR EMAIL PASSWORD
//       register -> login -> verify -> create (assigned to the user) -> list -> get ->
//       update -> delete -> logout -> verify again; every step is made whatever the one
//       before answered. Prints one JSON object: {step: {ok: response} or {error}}.
//   node legacy_clients.js [--from IP] call ADDR PROTO_DIR SERVICE METHOD JSON [TOKEN]
//       one call (TOKEN: sent as "authorization: Bearer TOKEN", which the original's
//       callers never do). Prints {ok: response} or {error}.
//
// error is {code, details, message}; message is grpc-js's "<code> <NAME>: <details>",
// the string the original notifier compares. --from binds the client's sockets to
// that source address: the test's stand-in for "runs on a trusted host" (grpc-js has
// no option for it; the calls themselves are unchanged).
'use strict';
const net = require('net');
const path = require('path');

const args = process.argv.slice(2);
if (args[0] === '--from') {
  const from = args[1];
  args.splice(0, 2);
  const connect = net.connect;
  net.connect = function (...a) {
    if (a[0] && typeof a[0] === 'object') a[0] = { ...a[0], localAddress: from };
    return connect.apply(this, a);
  };
}
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

function load(protoDir, file, service) {
  return grpc.loadPackageDefinition(protoLoader.loadSync(path.join(protoDir, file)))[service];
}

// int64 fields come as Long objects (proto-loader's default): print them as strings.
function plain(value) {
  return JSON.parse(JSON.stringify(value, (k, v) =>
    v && typeof v === 'object' && typeof v.toNumber === 'function' ? v.toString() : v));
}

function call(client, method, request, token) {
  const md = new grpc.Metadata();
  if (token) md.set('authorization', `Bearer ${token}`);
  return new Promise((resolve) => {
    client[method](request, md, { deadline: Date.now() + 15000 }, (error, response) => {
      if (error) {
        resolve({ error: { code: error.code, details: error.details, message: error.message } });
      } else {
        resolve({ ok: plain(response) });
      }
    });
  });
}

async function gateway(authAddr, taskAddr, protoDir, email, password) {
  const creds = grpc.credentials.createInsecure();
  const authClient = new (load(protoDir, 'auth.proto', 'AuthService'))(authAddr, creds);
  const taskClient = new (load(protoDir, 'task.proto', 'TaskService'))(taskAddr, creds);
  const out = {};
  // authController: the request body as it is
  out.register = await call(authClient, 'Register', { email, password });
  out.login = await call(authClient, 'Login', { email, password });
  const token = out.login.ok ? out.login.ok.token : 'x';
  // verifyTokenMiddleware: the caller's id from VerifyToken
  out.verify = await call(authClient, 'VerifyToken', { token });
  const userId = out.verify.ok ? out.verify.ok.userId : '0123456789abcdef01234567';
  // taskController: body, query, {id}, {id, ...body}, {id}
  out.create = await call(taskClient, 'CreateTask', {
    title: 'from the original gateway', description: 'legacy caller', status: 'open',
    assignedTo: userId,
  });
  const id = out.create.ok ? out.create.ok.id : '1';
  out.list = await call(taskClient, 'ListTasks', { assignedTo: userId, status: 'open' });
  out.get = await call(taskClient, 'GetTask', { id });
  out.update = await call(taskClient, 'UpdateTask', { id, status: 'in progress', title: 'renamed' });
  out.delete = await call(taskClient, 'DeleteTask', { id });
  out.get_deleted = await call(taskClient, 'GetTask', { id });
  // authController.logout: the id the middleware found
  out.logout = await call(authClient, 'Logout', { userId });
  out.verify_after_logout = await call(authClient, 'VerifyToken', { token });
  return out;
}

async function main() {
  const [cmd, ...rest] = args;
  let out;
  if (cmd === 'gateway') {
    out = await gateway(...rest);
  } else if (cmd === 'call') {
    const [addr, protoDir, service, method, json, token] = rest;
    const file = service === 'AuthService' ? 'auth.proto' : 'task.proto';
    const client = new (load(protoDir, file, service))(addr, grpc.credentials.createInsecure());
    out = await call(client, method, JSON.parse(json), token);
  } else {
    throw new Error(`unknown command ${cmd}`);
  }
  console.log(JSON.stringify(out));
}

main().then(() => process.exit(0), (e) => { console.error(e.stack); process.exit(1); });
