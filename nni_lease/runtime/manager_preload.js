'use strict';
// Preloaded into the NNI manager (a Node.js process) by nni_lease.runtime.manager through
// NODE_OPTIONS="--require <this file>". It does two things NNI 3.0 has no option for:
//
// 1. Bind. Every TCP listen() that names no host, or a wildcard host ('', 0.0.0.0, ::), binds to
//    NNI_LEASE_MANAGER_HOST instead (127.0.0.1 by default). NNI's REST server and web UI call
//    app.listen(port); the reuse-mode command channel creates ws.Server({port: port + 1}); both end up
//    in net.Server.prototype.listen, in one of its call forms, which are all handled here:
//    listen(port[, host][, backlog][, cb]), listen(options[, cb]), listen([cb]). Pipes (a path) and
//    existing handles are passed through untouched; an explicit specific host is kept.
// 2. Die with the launcher. NNI starts this process in its own process group, so it outlives a
//    SIGKILLed launcher. A watchdog notices when the parent process (NNI_LEASE_MANAGER_PARENT) is gone,
//    asks NNI to shut down (SIGTERM: the experiment stops and the trials are killed), and after
//    NNI_LEASE_MANAGER_GRACE_MS kills what is left of its process group (itself and its trials).
//
// Nothing happens when the variables are absent, and they (and this --require) are removed from the
// environment so that the trials and any other child do not inherit them.

const net = require('net');
const { isMainThread } = require('worker_threads');

const HOST = process.env.NNI_LEASE_MANAGER_HOST;
const PARENT = Number(process.env.NNI_LEASE_MANAGER_PARENT);
const GRACE_MS = Number(process.env.NNI_LEASE_MANAGER_GRACE_MS) || 10000;
const POLL_MS = 500;
const WILDCARD_HOSTS = new Set(['', '0.0.0.0', '::', '::0', '0:0:0:0:0:0:0:0']);

function scrubEnvironment() {
  for (const name of ['NNI_LEASE_MANAGER_HOST', 'NNI_LEASE_MANAGER_PARENT', 'NNI_LEASE_MANAGER_GRACE_MS']) {
    delete process.env[name];
  }
  const options = process.env.NODE_OPTIONS;
  if (options !== undefined) {
    // Remove the `--require "<this file>"` that nni_lease.runtime.manager put first.
    const quoted = JSON.stringify(__filename);
    const rest = options.split(`--require ${quoted}`).join('').trim();
    if (rest) {
      process.env.NODE_OPTIONS = rest;
    } else {
      delete process.env.NODE_OPTIONS;
    }
  }
}

// Node's own reading of a port argument: a number >= 0, or a string that is one; anything else is a
// pipe name (see lib/net.js, toNumber / isPipeName).
function toNumber(value) {
  const number = Number(value);
  return number >= 0 ? number : false;
}

function bindHost(requested) {
  return requested === undefined || requested === null || WILDCARD_HOSTS.has(requested) ? HOST : requested;
}

function patchListen() {
  const originalListen = net.Server.prototype.listen;
  net.Server.prototype.listen = function listen(...args) {
    const callback = typeof args[args.length - 1] === 'function' ? args.pop() : undefined;
    const first = args[0];
    let options = null;
    if (first !== null && typeof first === 'object') {
      const isHandle = first._handle !== undefined || first.handle !== undefined || first.fd !== undefined;
      if (!isHandle && first.path === undefined) {
        options = { ...first };
      }
    } else if (first === undefined || first === null || typeof first === 'number'
               || (typeof first === 'string' && toNumber(first) !== false)) {
      options = { port: first === undefined || first === null ? 0 : first };
      if (typeof args[1] === 'string') {
        options.host = args[1];
      }
      const backlog = toNumber(args.length > 1 && args[1]) || toNumber(args.length > 2 && args[2]);
      if (backlog) {
        options.backlog = backlog;
      }
    }
    if (options === null) {  // a pipe or an existing handle: nothing to bind
      return originalListen.apply(this, callback ? [...args, callback] : args);
    }
    options.host = bindHost(options.host);
    return callback ? originalListen.call(this, options, callback) : originalListen.call(this, options);
  };
}

function leadsItsProcessGroup() {
  try {
    process.kill(-process.pid, 0);
    return true;
  } catch (error) {
    return false;
  }
}

function startWatchdog() {
  const parent = process.ppid;
  const groupLeader = leadsItsProcessGroup();
  let orphaned = false;

  function killGroup() {
    if (groupLeader) {
      try {
        process.kill(-process.pid, 'SIGKILL');  // this process and the trials it started
      } catch (error) {
        // nothing left to kill
      }
    }
    process.exit(1);
  }

  process.on('exit', () => {
    if (orphaned && groupLeader) {
      try {
        process.kill(-process.pid, 'SIGKILL');  // trials NNI's shutdown did not end
      } catch (error) {
        // nothing left to kill
      }
    }
  });

  // Started directly by the launcher (the usual case): the parent pid changes once the launcher is
  // gone, which no later process can undo. Otherwise poll the launcher's pid.
  const direct = parent === PARENT;
  function launcherAlive() {
    if (direct) {
      return process.ppid === PARENT;
    }
    try {
      process.kill(PARENT, 0);
      return true;
    } catch (error) {
      return error.code !== 'ESRCH';
    }
  }

  const timer = setInterval(() => {
    if (launcherAlive()) {
      return;
    }
    orphaned = true;
    clearInterval(timer);
    process.stderr.write(`nni_lease: the process that started this NNI manager (pid ${PARENT}) is gone; `
                         + 'stopping the experiment and its trials.\n');
    setTimeout(killGroup, GRACE_MS);
    process.kill(process.pid, 'SIGTERM');  // NNI's graceful shutdown: stops trials, closes its ports
  }, POLL_MS);
  timer.unref();
}

if (HOST !== undefined) {
  scrubEnvironment();
  patchListen();
  if (isMainThread && Number.isInteger(PARENT) && PARENT > 0) {
    startWatchdog();
  }
}
