// The payload of an event as JSON (exact: integers beyond 2^53 keep their digits) and as
// a `tracklane send` command. No DOM state here besides building highlighted nodes.

// ---- exact JSON: integers beyond 2^53 keep their digits ------------------------------

export class RawNumber {
  constructor(text) {
    this.text = text;
  }
}

export function parseExact(text) {
  if (!/\d{16}/.test(text)) return JSON.parse(text);
  return JSON.parse(text, (key, value, context) => {
    if (
      typeof value === "number" &&
      !Number.isSafeInteger(value) &&
      context &&
      /^-?\d+$/.test(context.source)
    ) {
      return new RawNumber(context.source);
    }
    return value;
  });
}

// Walks a value as JSON, calling emit(cssClass, text); indent "" gives compact JSON.
export function walkJSON(value, indent, emit, pad = "") {
  const nl = indent ? "\n" : "";
  const inner = pad + indent;
  if (value === null || value === undefined) emit("j-lit", "null");
  else if (value instanceof RawNumber) emit("j-num", value.text);
  else if (typeof value === "number") emit("j-num", JSON.stringify(value));
  else if (typeof value === "boolean") emit("j-lit", String(value));
  else if (typeof value === "string") emit("j-str", JSON.stringify(value));
  else if (Array.isArray(value)) {
    if (!value.length) return emit(null, "[]");
    emit(null, "[" + nl);
    value.forEach((item, i) => {
      emit(null, inner);
      walkJSON(item, indent, emit, inner);
      emit(null, (i < value.length - 1 ? "," : "") + nl);
    });
    emit(null, pad + "]");
  } else {
    const keys = Object.keys(value);
    if (!keys.length) return emit(null, "{}");
    emit(null, "{" + nl);
    keys.forEach((key, i) => {
      emit(null, inner);
      emit("j-key", JSON.stringify(key));
      emit(null, indent ? ": " : ":");
      walkJSON(value[key], indent, emit, inner);
      emit(null, (i < keys.length - 1 ? "," : "") + nl);
    });
    emit(null, pad + "}");
  }
}

export function toJSON(value, indent = "") {
  const parts = [];
  walkJSON(value, indent, (_, text) => parts.push(text));
  return parts.join("");
}

export function highlighted(value) {
  const fragment = document.createDocumentFragment();
  walkJSON(value, "  ", (cls, text) => {
    if (!cls) return fragment.append(text);
    const span = document.createElement("span");
    span.className = cls;
    span.textContent = text;
    fragment.append(span);
  });
  return fragment;
}

// ---- the `tracklane send` command (analytics-ruby's flags) ---------------------------

function shellQuote(text) {
  return /^[\w@%+=:,./-]+$/.test(text) ? text : "'" + text.replaceAll("'", "'\\''") + "'";
}

export function sendCommand(message) {
  const args = [["--writeKey", '"$TRACKLANE_WRITE_KEY"']];
  const add = (flag, value, json = false) => {
    if (value === undefined || value === null || value === "") return;
    if (json && typeof value === "object" && !Object.keys(value).length) return;
    args.push([flag, shellQuote(json ? toJSON(value) : String(value instanceof RawNumber ? value.text : value))]);
  };
  const type = message.type;
  add("--type", type);
  add("--userId", message.userId);
  add("--anonymousId", message.anonymousId);
  if (type === "track") add("--event", message.event);
  if (type === "page" || type === "screen") add("--name", message.name);
  if (type === "page") add("--category", message.category);
  if (type === "track" || type === "page" || type === "screen") add("--properties", message.properties, true);
  if (type === "identify" || type === "group") add("--traits", message.traits, true);
  if (type === "group") add("--groupId", message.groupId);
  if (type === "alias") add("--previousId", message.previousId);
  add("--context", message.context, true);
  add("--integrations", message.integrations, true);
  add("--timestamp", message.originalTimestamp ?? message.timestamp);
  add("--messageId", message.messageId);
  add("--host", location.origin);
  return "tracklane send " + args.map(([flag, value]) => `${flag} ${value}`).join(" \\\n  ");
}

export function text(value) {
  if (value === undefined || value === null) return "";
  return value instanceof RawNumber ? value.text : String(value);
}

