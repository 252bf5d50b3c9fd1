-- :ExlspChat: sends `exlsp.chat` through workspace/executeCommand with a work-done token and
-- streams the $/progress reports of that token into a scratch buffer; the command's result (the
-- whole answer) replaces the streamed text at the end, so nothing is lost if a report was.
local server = require("exlsp.server")

local M = {}

local next_token = 0
local chat_bufnr = nil

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
---@field range table|nil LSP range of the selection

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
  argument.range = request.range

  local bufnr = open_buffer(window)
  append(bufnr, { "## You", "", request.message, "", "## exlsp", "" })
  local answer_row = vim.api.nvim_buf_line_count(bufnr) - 1
  local streamed = ""

  next_token = next_token + 1
  local token = ("exlsp-chat-%d-%d"):format(vim.uv.os_getpid(), next_token)
  local group = vim.api.nvim_create_augroup("exlsp_chat_" .. token, { clear = true })
  vim.api.nvim_create_autocmd("LspProgress", {
    group = group,
    pattern = "report",
    callback = function(args)
      local params = args.data and args.data.params
      if not params or params.token ~= token or type(params.value) ~= "table" then
        return
      end
      local piece = params.value.message
      if type(piece) == "string" and piece ~= "" then
        M.stats.reports = M.stats.reports + 1
        streamed = streamed .. piece
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

--- Length of a line in UTF-16 code units (LSP's default position encoding).
function M.utf16_length(line)
  if vim.fn.has("nvim-0.11") == 1 then
    return vim.str_utfindex(line, "utf-16")
  end
  local _, utf16 = vim.str_utfindex(line)
  return utf16
end

--- The LSP range of lines line1..line2 (1-based, inclusive) of a buffer, whole lines.
function M.line_range(bufnr, line1, line2)
  local last = vim.api.nvim_buf_get_lines(bufnr, line2 - 1, line2, false)[1] or ""
  return {
    start = { line = line1 - 1, character = 0 },
    ["end"] = { line = line2 - 1, character = M.utf16_length(last) },
  }
end

return M
