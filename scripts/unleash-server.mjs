// A local Unleash server for tests and development: 127.0.0.1 only, no version check,
// no telemetry, with seeded admin and client tokens. Configured by the environment
// that scripts/unleash.sh sets.
import { start } from 'unleash-server';

const env = process.env;
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
