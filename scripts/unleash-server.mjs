// A local Unleash server for tests and development: 127.0.0.1 only, no version check,
// no telemetry, with seeded admin and client tokens. Configured by the environment
// that scripts/unleash.sh sets.
import { start } from 'unleash-server';

const env = process.env;
const stamp = () => new Date().toISOString();

// Say why the server ends: at logLevel 'warn' Unleash's own shutdown is silent.
for (const signal of ['SIGINT', 'SIGHUP', 'SIGTERM']) {
  process.on(signal, () => console.error(`${stamp()} unleash-server: ${signal} received`));
}
process.on('exit', (code) => {
  console.error(`${stamp()} unleash-server: exiting with code ${code}`, new Error('exit').stack);
});

const before = {
  unhandledRejection: process.listeners('unhandledRejection'),
  uncaughtException: process.listeners('uncaughtException'),
};
await start({
  db: {
    host: '127.0.0.1',
    port: Number(env.UNLEASH_PG_PORT),
    user: env.UNLEASH_PG_USER,
    password: env.UNLEASH_PG_PASSWORD,
    database: env.UNLEASH_PG_DATABASE,
    ssl: false,
  },
  server: { host: '127.0.0.1', port: Number(env.UNLEASH_PORT) },
  versionCheck: { enable: false },
  telemetry: false,
  logLevel: 'warn',
  authentication: {
    initApiTokens: [
      { environment: '*', project: '*', secret: env.UNLEASH_ADMIN_TOKEN, type: 'admin', tokenName: 'task-shim-admin' },
      { environment: 'development', project: '*', secret: env.UNLEASH_API_TOKEN, type: 'backend', tokenName: 'task-shim-client' },
    ],
  },
});

// Unleash 7.5 checks its migrations with db-migrate, which installs process-wide
// handlers that end the process on any unhandled rejection or exception (db-migrate's
// api.js, unless `throwUncatched`). Unleash records a feature's creation and archiving
// from handlers that run after the request has answered; one whose feature was deleted
// meanwhile fails (a foreign key), and those handlers took the whole server down. The
// exiting handlers go; Unleash's own (server-impl.js) still logs each rejection, and an
// uncaught exception still ends the process the way Node does by default.
for (const [event, kept] of Object.entries(before)) {
  for (const listener of process.listeners(event)) {
    if (!kept.includes(listener) && String(listener).includes('process.exit')) {
      process.removeListener(event, listener);
    }
  }
}
