// Session affinity for picolm-server behind nginx (njs): the key that nginx hashes to
// pick the server for a chat request. It is the id the server itself derives and returns
// in the X-Session-ID response header (src/picolm_server/affinity.py), so a client that
// sends that header back lands where the body alone would have sent it:
//   1. the X-Session-ID request header, verbatim;
//   2. "key-"  + sha256(prompt_cache_key)[:32];
//   3. "user-" + sha256(user)[:32];
//   4. "chat-" + sha256(first system or developer message + "\0" + first user message)[:32].
// Needs the request body in memory: client_body_buffer_size >= client_max_body_size.
import crypto from 'crypto';

function digest(text) {
    return crypto.createHash('sha256').update(text).digest('hex').slice(0, 32);
}

function text(message) {
    if (!message || message.content === undefined || message.content === null) {
        return '';
    }
    if (typeof message.content === 'string') {
        return message.content;
    }
    if (!Array.isArray(message.content)) {
        return '';
    }
    return message.content
        .filter(part => part && part.type === 'text' && typeof part.text === 'string' && part.text)
        .map(part => part.text)
        .join('\n');
}

function key(r) {
    const header = (r.headersIn['X-Session-ID'] || '').trim();
    if (header) {
        return header;
    }
    let body;
    try {
        body = JSON.parse(r.requestText);
    } catch (e) {
        body = null;
    }
    if (!body || typeof body !== 'object') {
        // No body in memory, or not JSON: the server will refuse it anyway; any server will do.
        return r.variables.request_id;
    }
    if (typeof body.prompt_cache_key === 'string' && body.prompt_cache_key) {
        return 'key-' + digest(body.prompt_cache_key);
    }
    if (typeof body.user === 'string' && body.user) {
        return 'user-' + digest(body.user);
    }
    const messages = Array.isArray(body.messages) ? body.messages : [];
    const system = messages.find(m => m && (m.role === 'system' || m.role === 'developer'));
    const user = messages.find(m => m && m.role === 'user');
    return 'chat-' + digest(text(system) + '\u0000' + text(user));
}

export default { key };
