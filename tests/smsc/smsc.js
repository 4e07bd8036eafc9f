// A small SMSC for the SMPP tests (tests/test_smpp.py), on node-smpp's server mode.
//
//   node smsc.js --system-id ID --password PW [--receipt-delay-ms 200]
//
// Listens for SMPP and for control HTTP on two free 127.0.0.1 ports and prints them as its first line:
// {"event": "listening", "smpp_port": N, "control_port": M}. Every PDU received is kept (GET /pdus, as JSON,
// the submit_sm short_message as hex) and printed as a JSON line. POST /control with a JSON object changes
// what it does next:
//   statuses: [0x58, 11]      the next submit_sm are answered with these command_status, one each
//   silent: N                 the next N submit_sm get no submit_sm_resp at all
//   drop_on_submit: N         the next N submit_sm make it close the connection instead of answering
//   refuse_binds: true|false  binds are answered ESME_RBINDFAIL
//   receipt_stat: "DELIVRD"   the stat of the receipts it sends; null: no receipts
//   receipt_tlvs: true|false  receipts also carry receipted_message_id and message_state TLVs
//   drop: true                close every connection now (no unbind)
//   unbind: true              send unbind on every bound session (and close once it is answered)
'use strict';

const http = require('http');
const smpp = require('smpp');

// The submit_sm short_message as it came, bytes: node-smpp would decode it into text.
smpp.commands.submit_sm.params.short_message.filter = undefined;

const args = {};
for (let i = 2; i < process.argv.length; i += 2) {
  args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
}
const SYSTEM_ID = args['system-id'];
const PASSWORD = args['password'];
const RECEIPT_DELAY_MS = Number(args['receipt-delay-ms'] || 200);

const MESSAGE_STATES = {ENROUTE: 1, DELIVRD: 2, EXPIRED: 3, DELETED: 4, UNDELIV: 5, ACCEPTD: 6, UNKNOWN: 7, REJECTD: 8};
const control = {statuses: [], silent: 0, drop_on_submit: 0, refuse_binds: false, receipt_stat: 'DELIVRD',
                 receipt_tlvs: false};
const pdus = [];
const pendingReceipts = [];  // receipts no bound receiver could take yet: sent at the next bind
let nextMessageId = 0x1000;
let nextSession = 1;
const sessions = new Set();

function record(entry) {
  pdus.push(entry);
  process.stdout.write(JSON.stringify(entry) + '\n');
}

function pduFields(pdu) {
  const fields = {};
  for (const [key, value] of Object.entries(pdu)) {
    if (key === 'command_length' || typeof value === 'function') continue;
    fields[key] = Buffer.isBuffer(value) ? value.toString('hex') : value;
  }
  return fields;
}

function receiptDate(date) {
  const two = (n) => String(n).padStart(2, '0');
  return two(date.getUTCFullYear() % 100) + two(date.getUTCMonth() + 1) + two(date.getUTCDate())
    + two(date.getUTCHours()) + two(date.getUTCMinutes());
}

function sendReceipt(receipt) {
  const receivers = [...sessions].filter((s) => s.bound === 'bind_transceiver' || s.bound === 'bind_receiver');
  const session = receivers.includes(receipt.session) ? receipt.session : receivers[0];
  if (!session) {
    pendingReceipts.push(receipt);
    return;
  }
  const stat = receipt.stat;
  const now = receiptDate(new Date());
  const text = `id:${receipt.id} sub:001 dlvrd:${stat === 'DELIVRD' ? '001' : '000'} submit date:${now}`
    + ` done date:${now} stat:${stat} err:${stat === 'DELIVRD' ? '000' : '001'} text:`;
  const options = {
    source_addr_ton: receipt.submit.dest_addr_ton, source_addr_npi: receipt.submit.dest_addr_npi,
    source_addr: receipt.submit.destination_addr, dest_addr_ton: receipt.submit.source_addr_ton,
    dest_addr_npi: receipt.submit.source_addr_npi, destination_addr: receipt.submit.source_addr,
    esm_class: 0x04, data_coding: 0, short_message: Buffer.from(text, 'ascii'),
  };
  if (receipt.tlvs) {
    options.receipted_message_id = receipt.id;
    options.message_state = MESSAGE_STATES[stat];
  }
  record({event: 'sent', session: session.id, command: 'deliver_sm', receipted: receipt.id, stat});
  session.deliver_sm(options);
}

function onSubmit(session, pdu) {
  if (!session.bound || session.bound === 'bind_receiver') {
    session.send(pdu.response({command_status: smpp.ESME_RINVBNDSTS}));
    return;
  }
  if (control.drop_on_submit > 0) {
    control.drop_on_submit -= 1;
    record({event: 'dropped', session: session.id, sequence_number: pdu.sequence_number});
    session.destroy();
    return;
  }
  if (control.silent > 0) {
    control.silent -= 1;
    return;
  }
  const status = control.statuses.length ? control.statuses.shift() : 0;
  if (status) {
    session.send(pdu.response({command_status: status}));
    return;
  }
  const id = (nextMessageId++).toString(16);
  session.send(pdu.response({message_id: id}));
  if ((pdu.registered_delivery & 0x03) && control.receipt_stat) {
    const receipt = {id, session, submit: pdu, stat: control.receipt_stat, tlvs: control.receipt_tlvs};
    setTimeout(() => sendReceipt(receipt), RECEIPT_DELAY_MS);
  }
}

function onBind(session, pdu) {
  let status = 0;
  if (session.bound) status = smpp.ESME_RALYBND;
  else if (control.refuse_binds) status = smpp.ESME_RBINDFAIL;
  else if (pdu.system_id !== SYSTEM_ID) status = smpp.ESME_RINVSYSID;
  else if (pdu.password !== PASSWORD) status = smpp.ESME_RINVPASWD;
  session.send(pdu.response({command_status: status, system_id: 'test-smsc'}));
  if (status) return;
  session.bound = pdu.command;
  if (pdu.command !== 'bind_transmitter') {
    pendingReceipts.splice(0).forEach(sendReceipt);
  }
}

const server = smpp.createServer((session) => {
  session.id = nextSession++;
  session.bound = null;
  sessions.add(session);
  record({event: 'connected', session: session.id});
  session.on('close', () => {
    sessions.delete(session);
    record({event: 'closed', session: session.id});
  });
  session.on('error', () => {});  // a reset by the client: 'close' follows
  session.on('pdu', (pdu) => {
    record({event: 'pdu', session: session.id, ...pduFields(pdu)});
    switch (pdu.command) {
      case 'bind_transceiver':
      case 'bind_transmitter':
      case 'bind_receiver':
        onBind(session, pdu);
        break;
      case 'submit_sm':
        onSubmit(session, pdu);
        break;
      case 'enquire_link':
        session.send(pdu.response());
        break;
      case 'unbind':
        session.send(pdu.response());
        session.bound = null;
        session.close();
        break;
      case 'unbind_resp':
        session.close();
        break;
      default:
        if (!pdu.isResponse()) session.send(pdu.response({command_status: smpp.ESME_RINVCMDID}));
    }
  });
});

function readBody(request) {
  return new Promise((resolve) => {
    let body = '';
    request.on('data', (chunk) => { body += chunk; });
    request.on('end', () => resolve(body ? JSON.parse(body) : {}));
  });
}

const controlServer = http.createServer(async (request, response) => {
  if (request.method === 'GET' && request.url === '/pdus') {
    response.setHeader('Content-Type', 'application/json');
    response.end(JSON.stringify(pdus));
    return;
  }
  if (request.method === 'POST' && request.url === '/control') {
    const change = await readBody(request);
    for (const key of Object.keys(control)) {
      if (key in change) control[key] = JSON.parse(JSON.stringify(change[key]));
    }
    if (change.drop) sessions.forEach((session) => session.destroy());
    if (change.unbind) sessions.forEach((session) => session.bound && session.unbind());
    record({event: 'control', ...JSON.parse(JSON.stringify(change))});
    response.end('{}');
    return;
  }
  response.statusCode = 404;
  response.end();
});

server.listen(0, '127.0.0.1', () => {
  controlServer.listen(0, '127.0.0.1', () => {
    process.stdout.write(JSON.stringify({event: 'listening', smpp_port: server.address().port,
                                         control_port: controlServer.address().port}) + '\n');
  });
});
process.on('SIGTERM', () => process.exit(0));
