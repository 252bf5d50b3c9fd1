-- :ExlspChat: sends `exlsp.chat` through workspace/executeCommand with a work-done token and
-- streams the $/progress reports of that token into a scratch buffer; the command's result (the
-- whole answer) replaces the streamed text at the end, so nothing is lost if a report was.
local server = require("exlsp.server")

local M = {}

local next_token = 0
local chat_bufnr = nil

-- The title of the server's own chat progress (exlsp/handlers/actions.py).
M.progress_title = "exlsp chat"

-- Counters the tests read: progress reports received, chats finished.
M.stats = { reports = 0, finished = 0 }

---@param window string "vsplit", "split" or "tab"
---@return integer bufnr
local function open_buffer(window)
  if not (chat_bufnr and vim.api.nvim_buf_is_valid(chat_bufnr)) then
    chat_bufnr = vim.api.nvim_create_buf(false, true)
    vim.bo[chat_bufnr].filetype = "markdown"
    vim.bo[chat_bufnr].bufhidden = "hide"
    pcall(vim.api.nvim_buf_set_name, chat_bufnr, "exlsp://chat")
  end
  if vim.fn.bufwinid(chat_bufnr) == -1 then
    local open = ({ split = "split", tab = "tabnew", vsplit = "vsplit" })[window] or "vsplit"
    vim.cmd(open)
    vim.api.nvim_win_set_buf(0, chat_bufnr)
  end
  return chat_bufnr
end

local function append(bufnr, lines)
  local count = vim.api.nvim_buf_line_count(bufnr)
  local only_empty = count == 1 and vim.api.nvim_buf_get_lines(bufnr, 0, 1, false)[1] == ""
  vim.api.nvim_buf_set_lines(bufnr, only_empty and 0 or count, -1, false, lines)
end

--- Replaces the lines from `first_row` (0-based) to the end with `answer`.
local function set_answer(bufnr, first_row, answer)
  vim.api.nvim_buf_set_lines(bufnr, first_row, -1, false, vim.split(answer, "\n", { plain = true }))
  local win = vim.fn.bufwinid(bufnr)
  if win ~= -1 then
    vim.api.nvim_win_set_cursor(win, { vim.api.nvim_buf_line_count(bufnr), 0 })
  end
end

---@class exlsp.ChatRequest
---@field message string
---@field bufnr integer source buffer (for its uri)
---@field lines integer[]|nil first and last line (1-based) of the selection

---@param request exlsp.ChatRequest
---@param window string
function M.send(request, window)
  local client = server.client(request.bufnr) or server.client()
  if not client then
    vim.notify("exlsp: the server is not running for this buffer", vim.log.levels.ERROR)
    return
  end
  local argument = { message = request.message }
  if vim.api.nvim_buf_get_name(request.bufnr) ~= "" then
    argument.uri = vim.uri_from_bufnr(request.bufnr)
  end
  if request.lines then
    local encoding = client.offset_encoding or "utf-16"
    argument.range = M.line_range(request.bufnr, request.lines[1], request.lines[2], encoding)
  end

  local bufnr = open_buffer(window)
  append(bufnr, { "## You", "", request.message, "", "## exlsp", "" })
  local answer_row = vim.api.nvim_buf_line_count(bufnr) - 1
  local streamed = ""

  next_token = next_token + 1
  local token = ("exlsp-chat-%d-%d"):format(vim.uv.os_getpid(), next_token)
  local group = vim.api.nvim_create_augroup("exlsp_chat_" .. token, { clear = true })
  -- The server may stream under our workDoneToken or under a token it creates itself
  -- (window/workDoneProgress/create) whose begin title is "exlsp chat": adopt the first such.
  local server_token = nil
  vim.api.nvim_create_autocmd("LspProgress", {
    group = group,
    callback = function(args)
      local params = args.data and args.data.params
      if not params or args.data.client_id ~= client.id or type(params.value) ~= "table" then
        return
      end
      local value = params.value
      if value.kind == "begin" and value.title == M.progress_title and params.token ~= token then
        server_token = server_token or params.token
        return
      end
      if value.kind ~= "report" or (params.token ~= token and params.token ~= server_token) then
        return
      end
      if type(value.message) == "string" and value.message ~= "" then
        M.stats.reports = M.stats.reports + 1
        streamed = streamed .. value.message
        set_answer(bufnr, answer_row, streamed)
      end
    end,
  })
  server.request(client, "workspace/executeCommand", {
    command = "exlsp.chat",
    arguments = { argument },
    workDoneToken = token,
  }, function(err, result)
    vim.api.nvim_del_augroup_by_id(group)
    M.stats.finished = M.stats.finished + 1
    if err then
      set_answer(bufnr, answer_row, streamed .. "\n\n[error] " .. tostring(err.message))
      return
    end
    if type(result) == "string" then
      set_answer(bufnr, answer_row, result)
    elseif type(result) == "table" and type(result.text) == "string" then
      set_answer(bufnr, answer_row, result.text)
    end
    append(bufnr, { "" })
  end, request.bufnr)
end

--- Length of a line in the position encoding the server chose ("utf-8", "utf-16", "utf-32").
function M.encoded_length(line, encoding)
  if encoding == "utf-8" then
    return #line
  end
  if vim.fn.has("nvim-0.11") == 1 then
    return vim.str_utfindex(line, encoding)
  end
  local utf32, utf16 = vim.str_utfindex(line)
  return encoding == "utf-32" and utf32 or utf16
end

--- The LSP range of lines line1..line2 (1-based, inclusive) of a buffer, whole lines.
function M.line_range(bufnr, line1, line2, encoding)
  local last = vim.api.nvim_buf_get_lines(bufnr, line2 - 1, line2, false)[1] or ""
  return {
    start = { line = line1 - 1, character = 0 },
    ["end"] = { line = line2 - 1, character = M.encoded_length(last, encoding or "utf-16") },
  }
end

return M
